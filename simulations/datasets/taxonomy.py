"""The synthetic dataset's interest taxonomy: 20 roots, 136 leaves, each leaf with its own
vocabulary of specific terms (people, gear, places, techniques) from which item titles,
descriptions, search queries and reviews are composed, and each root with words its leaves
share.

Written for this project. The names match the project's public label vocabulary
(:mod:`common.vocabulary`), which is a superset; the terms here are what a language model
uses to separate the leaves, so they are specific to one leaf and never shared.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = ["LEAF_TERMS", "ROOTS", "ROOT_TERMS"]

_RAW: Final[dict[str, dict[str, str]]] = {
    "Sports": {
        "Soccer": "striker; goalkeeper gloves; penalty shootout; Premier League table; Champions League knockout; offside rule; World Cup qualifier; midfield pressing; football boots; transfer window; free kick technique; La Liga derby",
        "Basketball": "NBA playoffs; three-point shooting; slam dunk contest; point guard; pick and roll; basketball shoes; March Madness bracket; rebounds per game; free throw routine; hardwood court; WNBA finals; crossover dribble",
        "Tennis": "Wimbledon; grand slam final; tennis racket strings; backhand slice; clay court season; serve and volley; US Open draw; tie-break; baseline rally; ATP rankings; tennis elbow; doubles partner",
        "Running": "marathon training plan; running shoes cushioning; half marathon pace; interval sprints; trail running; 5K personal best; running cadence; carbon plate racers; long run fueling; parkrun; shin splints; tempo run",
        "Cycling": "road bike frame; Tour de France stage; cycling cleats; carbon wheelset; gravel bike; bike chain lube; peloton breakaway; power meter watts; bike helmet; mountain bike suspension; indoor trainer; derailleur gears",
        "Swimming": "freestyle stroke; swim goggles; butterfly technique; open water swim; lap pool workout; flip turn; breaststroke kick; swimsuit chlorine resistant; swim cap; backstroke; triathlon swim leg; kickboard drills",
        "Golf": "golf driver; putting green; handicap index; golf swing plane; PGA Tour; golf balls spin; fairway woods; bunker shot; tee time; Masters at Augusta; golf cart; iron set",
        "Skiing": "ski boots; powder skiing; slalom race; ski wax; alpine ski resort lift pass; off-piste avalanche gear; ski goggles; carving turns; freestyle ski jump; cross-country skis; apres-ski; ski poles",
    },
    "Technology": {
        "Smartphones": "smartphone camera; iPhone release; Android update; phone battery life; foldable phone; OLED display phone; 5G handset; phone case; mobile processor benchmark; wireless charging pad; screen protector; unlocked phone deal",
        "Laptops": "ultrabook; gaming laptop GPU; laptop keyboard; MacBook; Chromebook for students; laptop battery hours; thin and light notebook; laptop cooling pad; 2-in-1 convertible; laptop RAM upgrade; docking station; laptop screen resolution",
        "Programming": "Python library; JavaScript framework; code review; Git branching; unit testing; Rust compiler; API design; debugging a memory leak; open source contribution; TypeScript types; refactoring legacy code; SQL query optimisation",
        "Artificial Intelligence": "large language model; neural network training; machine learning pipeline; transformer architecture; AI chatbot; reinforcement learning agent; computer vision model; generative AI image; model fine-tuning; AI ethics; GPU cluster; prompt engineering",
        "Cybersecurity": "ransomware attack; password manager; two-factor authentication; phishing email; zero-day vulnerability; firewall rules; VPN encryption; data breach; penetration testing; malware analysis; security patch; antivirus scan",
        "Smart Home": "smart thermostat; voice assistant speaker; smart light bulbs; video doorbell; home automation hub; smart plug; robot vacuum; security camera app; Zigbee sensor; smart lock; Matter protocol; motion sensor routine",
        "Consumer Audio": "noise cancelling headphones; wireless earbuds; bluetooth speaker; soundbar; hi-fi amplifier; turntable cartridge; studio monitors; headphone DAC; audiophile cables; surround sound system; earbud ear tips; lossless streaming",
    },
    "Food & Drink": {
        "Baking": "sourdough starter; bread flour; croissant lamination; cake frosting; stand mixer; pie crust; baking powder; chocolate chip cookies; proofing basket; cinnamon rolls; oven temperature; banana bread loaf",
        "Vegan Cooking": "plant-based protein; tofu scramble; vegan cheese; lentil curry; chickpea salad; oat milk; jackfruit tacos; nutritional yeast; cashew cream; tempeh stir-fry; vegan meal prep; seitan roast",
        "Coffee": "espresso machine; pour-over coffee; coffee beans roast; burr grinder; latte art; cold brew; French press; single origin beans; milk frother; AeroPress; coffee crema; barista tamper",
        "Wine": "Cabernet Sauvignon; Pinot Noir; wine tasting; sommelier notes; Bordeaux vintage; wine cellar; Chardonnay; natural wine; wine decanter; Champagne; Tuscany vineyard; tannins and acidity",
        "Grilling & BBQ": "charcoal grill; smoked brisket; pellet smoker; barbecue sauce; pulled pork; dry rub; meat thermometer; grill grates; burnt ends; kamado grill; spare ribs; wood chips",
        "Asian Cuisine": "ramen broth; sushi rice; dim sum; Thai green curry; pad thai; kimchi fermentation; wok hei; pho noodle soup; miso glaze; dumpling folding; Szechuan peppercorn; bibimbap",
        "Craft Beer": "IPA hops; home brewing kit; stout; craft brewery taproom; sour beer; lager fermentation; hazy pale ale; beer tasting flight; malt barley; Belgian tripel; growler; brewing yeast",
        "Italian Cuisine": "fresh pasta dough; Neapolitan pizza; risotto; carbonara; tiramisu; olive oil; parmesan cheese; gnocchi; bolognese ragu; pizza stone; focaccia; osso buco",
    },
    "Travel": {
        "Beach Holidays": "all-inclusive resort; Caribbean beach; snorkeling reef; Maldives overwater villa; sunscreen; beach towel; Bali; turquoise lagoon; sun lounger; Greek islands; tropical island; swim-up bar",
        "Backpacking": "hostel dorm; backpack 60 liter; gap year; overland bus; Southeast Asia route; budget travel; travel insurance; couchsurfing; rail pass; packing cubes; street food tour; visa on arrival",
        "City Breaks": "weekend in Paris; museum pass; Rome sightseeing; boutique hotel; Barcelona tapas; city walking tour; Amsterdam canals; Prague old town; rooftop bar; New York itinerary; Lisbon tram; metro day ticket",
        "Cruises": "cruise ship cabin; Mediterranean cruise; shore excursion; balcony stateroom; Alaska cruise; river cruise Danube; cruise buffet; Caribbean port of call; embarkation day; cruise line; ocean liner; all-you-can-drink package",
        "Road Trips": "road trip route; Route 66; campervan rental; scenic drive; gas station snacks; motel; Pacific Coast Highway; road atlas; car rental; national park loop; rest stop; driving playlist",
        "Luxury Hotels": "five-star hotel; presidential suite; spa resort; hotel concierge; Michelin restaurant; butler service; infinity pool; luxury villa; room upgrade; Ritz; champagne welcome; private beach",
        "Air Travel": "frequent flyer miles; business class seat; airport lounge; cheap flights; jet lag; carry-on luggage; layover; airline status; boarding pass; flight delay compensation; red-eye flight; seat upgrade",
    },
    "Personal Finance": {
        "Stock Market Investing": "index fund; dividend stocks; S&P 500; stock portfolio; ETF expense ratio; price-to-earnings ratio; brokerage account; bull market; growth stocks; quarterly earnings; dollar-cost averaging; value investing",
        "Cryptocurrency": "Bitcoin halving; Ethereum staking; crypto wallet; blockchain; altcoin; DeFi protocol; NFT marketplace; crypto exchange; stablecoin; seed phrase; mining rig; token airdrop",
        "Retirement Planning": "401k match; Roth IRA; pension; retirement savings calculator; annuity; early retirement FIRE; social security benefits; required minimum distribution; nest egg; retirement income; target date fund; catch-up contributions",
        "Budgeting": "monthly budget; envelope method; emergency fund; debt snowball; expense tracker app; frugal living; saving money tips; zero-based budget; grocery budget; sinking funds; spending freeze; paycheck planning",
        "Credit & Loans": "credit score; credit card rewards; personal loan; balance transfer; mortgage rate; student loan refinance; APR; credit report dispute; car loan; debt consolidation; cashback card; home equity line",
        "Taxes": "tax return; tax deduction; tax refund; capital gains tax; tax bracket; self-employed taxes; W-2 form; tax software; itemized deductions; tax audit; property tax; tax-loss harvesting",
        "Insurance": "life insurance policy; health insurance premium; car insurance quote; home insurance claim; deductible; term life; renters insurance; insurance coverage; travel insurance claim; pet insurance; umbrella policy; insurance broker",
    },
    "Health & Fitness": {
        "Yoga": "yoga mat; downward dog; vinyasa flow; yoga retreat; hatha yoga; sun salutation; yoga blocks; hot yoga; yin yoga; warrior pose; yoga teacher training; restorative yoga",
        "Strength Training": "barbell squat; deadlift form; bench press; dumbbells; progressive overload; protein shake; kettlebell swing; muscle hypertrophy; gym split routine; pull-up bar; powerlifting meet; resistance bands",
        "Nutrition & Dieting": "keto diet; intermittent fasting; calorie deficit; macronutrients; meal replacement; Mediterranean diet; fiber intake; low carb recipes; vitamin supplements; protein grams; weight loss plan; nutrition label",
        "Mental Health": "anxiety relief; therapy session; depression symptoms; mindfulness practice; cognitive behavioral therapy; stress management; burnout recovery; panic attacks; self-care routine; mental health app; counselor; emotional resilience",
        "Sleep": "sleep hygiene; insomnia; melatonin; memory foam mattress; sleep tracker; REM cycle; weighted blanket; blackout curtains; sleep apnea; bedtime routine; power nap; white noise machine",
        "Diabetes Care": "blood sugar monitor; insulin pump; type 2 diabetes; A1C test; glucose meter; diabetic diet; continuous glucose monitor; carb counting; metformin; hypoglycemia; diabetic foot care; insulin pen",
        "Dental Care": "electric toothbrush; teeth whitening; dental floss; orthodontic braces; cavity filling; dentist checkup; gum disease; invisible aligners; root canal; mouthwash; dental implant; wisdom teeth",
    },
    "Music": {
        "Rock Music": "electric guitar riff; classic rock album; rock band tour; drum solo; punk rock; vinyl reissue of a rock record; stadium rock concert; power chords; grunge; rock anthem; bass guitar line; hard rock ballad",
        "Hip Hop": "rap lyrics; hip hop beat; mixtape; freestyle battle; trap music; MC flow; sampling breakbeats; hip hop producer; rap album drop; boom bap; DJ scratching; verse feature",
        "Classical Music": "symphony orchestra; Beethoven sonata; Mozart concerto; opera house; string quartet; conductor baton; Bach fugue; piano recital; chamber music; Tchaikovsky ballet; philharmonic season; violin concerto",
        "Jazz": "jazz saxophone; bebop; swing band; jazz standards; improvisation solo; Miles Davis; jazz club; upright bass; big band; smooth jazz; John Coltrane; blue note scale",
        "Electronic Music": "techno DJ set; synthesizer patch; house music; EDM festival; drum machine; modular synth; ambient electronica; Ableton Live; dubstep drop; trance anthem; club night; MIDI controller",
        "Country Music": "country singer; Nashville; honky-tonk; steel guitar; country ballad; Grand Ole Opry; bluegrass banjo; line dancing; cowboy songs; country radio hit; Americana; fiddle tune",
        "Guitar Playing": "acoustic guitar; guitar chords for beginners; fingerpicking; guitar tuner; guitar pedals; fretboard scales; capo; guitar strings gauge; strumming pattern; guitar amp; barre chords; guitar lessons",
        "Concerts & Festivals": "festival lineup; concert tickets; Coachella; music festival camping; front row; encore; arena tour dates; Glastonbury; ticket presale; live music venue; festival wristband; headliner set",
    },
    "Movies & TV": {
        "Science Fiction Films": "space opera; time travel movie; alien invasion; dystopian future; cyberpunk film; starship; Star Wars; Blade Runner; android; interstellar voyage; sci-fi blockbuster; parallel universe",
        "Horror Films": "haunted house; slasher movie; zombie apocalypse; jump scare; exorcism; horror franchise; ghost story; vampire film; found footage horror; serial killer thriller; creepy doll; horror sequel",
        "Animated Films": "Pixar; Disney animation; animated feature; Studio Ghibli; stop-motion; cartoon characters; family animated movie; computer animation; DreamWorks; animated musical; voice cast; animation studio",
        "Documentaries": "nature documentary; true crime docuseries; wildlife film; investigative documentary; historical documentary; David Attenborough; food documentary; sports documentary; documentary filmmaker; climate documentary; biographical documentary; archival footage",
        "Crime Dramas": "detective series; police procedural; mafia drama; heist thriller; murder investigation; crime boss; courtroom drama; undercover cop; forensic lab; cold case; gangster saga; crime drama season finale",
        "Romantic Comedies": "rom-com; meet-cute; wedding movie; love triangle; romantic comedy classic; Valentine's movie; first date; holiday romance; enemies to lovers; Hugh Grant; rom-com soundtrack; happily ever after",
        "Reality TV": "reality show; dating show; cooking competition; talent show audition; reality TV drama; elimination round; Survivor; Big Brother house; makeover show; reality star; Love Island; Bachelor finale",
        "Anime": "anime series; manga adaptation; shonen; Studio Trigger; anime opening theme; mecha; isekai; One Piece; cosplay; Crunchyroll; slice of life anime; Naruto",
    },
    "Books & Literature": {
        "Mystery Novels": "whodunit; detective novel; Agatha Christie; locked room mystery; cozy mystery; plot twist; Sherlock Holmes; mystery series; amateur sleuth; red herring; crime novel; murder mystery book",
        "Fantasy Novels": "epic fantasy; dragons; magic system; Tolkien; sword and sorcery; fantasy trilogy; wizard; elves and dwarves; fantasy map; chosen one; Game of Thrones books; high fantasy saga",
        "Poetry": "poetry collection; sonnet; haiku; spoken word; free verse; poet laureate; Emily Dickinson; poetry reading; rhyme scheme; Rumi; slam poetry; stanza",
        "Biographies": "autobiography; memoir; biography of a president; life story; celebrity memoir; historical biography; Steve Jobs biography; Churchill; founding fathers; biography bestseller; athlete memoir; authorized biography",
        "Self-Help Books": "habit building; productivity book; Atomic Habits; personal growth; motivation; self-improvement; mindset; time management book; confidence; The Power of Now; life coaching; goal setting",
        "Comics & Graphic Novels": "superhero comics; Marvel; DC Comics; graphic novel; comic book issue; Batman; Spider-Man; manga volume; webcomic; comic con; trade paperback; X-Men",
        "Historical Fiction": "Tudor England; World War II novel; Victorian era; historical saga; Roman empire novel; Regency romance; medieval England; Civil War fiction; Napoleonic wars; historical fiction bestseller; period setting; ancient Egypt novel",
        "Children's Books": "picture book; bedtime story; Dr. Seuss; early reader; children's book illustrations; fairy tale; board book; chapter book; Roald Dahl; read-aloud; Very Hungry Caterpillar; middle grade series",
    },
    "Home & Garden": {
        "Gardening": "vegetable garden; raised garden bed; tomato plants; compost bin; organic fertilizer; pruning shears; perennial flowers; seed starting; garden hose; mulch; heirloom seeds; weeding",
        "Houseplants": "monstera; fiddle leaf fig; succulents; snake plant; pothos; repotting; grow light; plant humidity; peace lily; cactus; orchid care; terrarium",
        "Interior Design": "living room decor; accent wall; Scandinavian interior; mid-century modern; color palette; throw pillows; gallery wall; minimalist bedroom; area rug; boho decor; paint swatches; statement lighting",
        "DIY Home Improvement": "power drill; drywall repair; tile backsplash; deck staining; kitchen remodel; plumbing fix; laminate flooring; circular saw; caulking; bathroom renovation; stud finder; paint roller",
        "Kitchen Appliances": "air fryer; instant pot; blender; dishwasher; refrigerator; microwave oven; food processor; toaster oven; slow cooker; induction cooktop; espresso maker; range hood",
        "Furniture": "sectional sofa; dining table; bookshelf; office chair; bed frame; coffee table; dresser; recliner; flat-pack assembly; solid wood furniture; accent chair; TV stand",
        "Cleaning & Organizing": "decluttering; closet organizer; cleaning hacks; steam mop; Marie Kondo; storage bins; laundry stain remover; pantry organization; vacuum cleaner; spring cleaning; label maker; microfiber cloths",
    },
    "Fashion & Beauty": {
        "Sneakers": "sneaker drop; Air Jordan; running sneakers; limited edition kicks; sneaker resale; Yeezy; white leather sneakers; sneaker collection; Nike Dunk; high-top trainers; sneaker cleaning kit; Adidas Samba",
        "Skincare": "retinol serum; moisturizer; sunscreen SPF 50; hyaluronic acid; acne treatment; vitamin C serum; skincare routine; exfoliating toner; facial cleanser; anti-aging cream; niacinamide; eye cream",
        "Makeup": "foundation shade; mascara; eyeshadow palette; lipstick; contour; makeup brushes; concealer; setting spray; eyeliner wing; blush; highlighter; makeup tutorial",
        "Women's Fashion": "summer dress; handbag; high heels; trench coat; blouse; capsule wardrobe; designer jeans; little black dress; runway trends; ankle boots; maxi skirt; fashion week",
        "Men's Fashion": "tailored suit; chinos; leather belt; oxford shoes; bomber jacket; dress shirt; menswear style; denim jacket; tie knot; chelsea boots; grooming kit; slim fit blazer",
        "Watches": "automatic watch; Rolex; chronograph; dive watch; smartwatch strap; watch movement; Omega Speedmaster; mechanical watch; watch collector; Seiko; sapphire crystal; GMT watch",
        "Jewelry": "engagement ring; diamond necklace; gold earrings; silver bracelet; gemstone; pearl necklace; jewelry box; wedding band; charm bracelet; birthstone; custom pendant; platinum ring",
        "Hair Care": "shampoo; conditioner; hair dryer; curly hair routine; hair dye; flat iron; hair mask; split ends; dry shampoo; balayage; hair serum; scalp treatment",
    },
    "Automotive": {
        "Electric Vehicles": "Tesla Model 3; EV charging station; electric car range; battery pack; home wall charger; regenerative braking; EV tax credit; fast charging; electric SUV; kilowatt-hours; charging network; EV road trip",
        "Motorcycles": "motorcycle helmet; sport bike; Harley-Davidson; touring motorcycle; motorcycle jacket; dirt bike; cafe racer; motorcycle license; riding gloves; chain maintenance; adventure bike; motorcycle rally",
        "Car Maintenance": "oil change; brake pads; tire rotation; check engine light; car battery; windshield wipers; spark plugs; transmission fluid; car wash; tire pressure; timing belt; mechanic",
        "Classic Cars": "vintage car restoration; muscle car; classic Mustang; car show; Porsche 911 classic; chrome bumper; carburetor rebuild; barn find; classic car auction; Volkswagen Beetle; hot rod; original paint",
        "Pickup Trucks & SUVs": "pickup truck; towing capacity; off-road SUV; four-wheel drive; Ford F-150; truck bed cover; Jeep Wrangler; lift kit; all-terrain tires; full-size SUV; roof rack; trailer hitch",
        "Motorsport": "Formula 1 Grand Prix; pit stop; pole position; NASCAR; race car driver; MotoGP; Le Mans 24 hours; rally car; qualifying lap; constructors championship; racing circuit; F1 team radio",
    },
    "Pets & Animals": {
        "Dogs": "puppy training; dog food; golden retriever; dog leash; dog grooming; dog park; dog breeds; chew toys; dog bed; obedience class; French bulldog; dog walker",
        "Cats": "cat litter; kitten; cat tree; scratching post; cat food; Maine Coon; cat toys; indoor cat; hairball; cat carrier; Siamese cat; catnip",
        "Aquariums": "fish tank; aquarium filter; tropical fish; coral reef tank; betta fish; aquarium plants; water testing kit; goldfish; saltwater aquarium; aquarium heater; guppies; fish food flakes",
        "Birds": "parrot; birdcage; budgie; bird seed; cockatiel; bird feeder; macaw; talking parrot; canary; bird toys; parakeet; bird bath",
        "Horses": "horse riding; saddle; equestrian; dressage; horse stable; horseshoe; show jumping; pony; horse grooming; riding boots; bridle; horse trail ride",
        "Reptiles": "bearded dragon; leopard gecko; ball python; reptile terrarium; heat lamp; tortoise; corn snake; reptile enclosure; UVB light; iguana; chameleon; feeder crickets",
    },
    "Science": {
        "Astronomy & Space": "telescope; Mars rover; black hole; NASA launch; galaxy; exoplanet; International Space Station; solar eclipse; meteor shower; James Webb telescope; nebula; SpaceX rocket",
        "Physics": "quantum mechanics; particle accelerator; relativity; Higgs boson; dark matter; quantum computing; string theory; thermodynamics; electromagnetism; CERN; gravitational waves; Schrodinger equation",
        "Biology & Genetics": "DNA sequencing; CRISPR; gene editing; evolution; cell biology; genome; microbiome; protein folding; stem cells; heredity; mutation; biodiversity",
        "Climate & Environment": "climate change; carbon emissions; renewable energy; global warming; sea level rise; solar panels; deforestation; recycling; carbon footprint; wildfire season; wind turbines; net zero",
        "Chemistry": "periodic table; chemical reaction; organic chemistry; molecules; lab experiment; chemical bonds; acids and bases; polymers; catalyst; titration; chemistry set; molar mass",
        "Archaeology": "archaeological dig; ancient ruins; pyramids; fossil; excavation site; Roman artifacts; Stonehenge; dinosaur bones; Mayan temple; carbon dating; lost city; archaeologist",
    },
    "Parenting & Family": {
        "Pregnancy": "pregnancy symptoms; due date; prenatal vitamins; first trimester; baby bump; maternity clothes; ultrasound; birth plan; morning sickness; baby shower; labor and delivery; pregnancy test",
        "Baby Care": "diapers; baby formula; stroller; crib; baby monitor; breastfeeding; teething; baby sleep schedule; car seat; swaddle; baby bottles; newborn care",
        "Toddlers": "potty training; toddler tantrums; toddler activities; sippy cup; daycare; toddler meals; terrible twos; toddler sleep regression; play dough; learning colors; toddler shoes; nap time",
        "Teenagers": "teen screen time; homework help; teenage mood swings; driving lessons; teen social media; curfew; prom; teen allowance; high school grades; teen friendships; college prep; first job for teens",
        "Family Activities": "family game night; family vacation; kids crafts; theme park; family movie night; playground; camping with kids; zoo trip; family picnic; board games for kids; birthday party ideas; museum for kids",
    },
    "Games": {
        "Video Games": "open world RPG; game console; PlayStation; Xbox; Nintendo Switch; boss fight; video game walkthrough; controller; game patch; multiplayer shooter; speedrun; DLC expansion",
        "Board Games": "Catan; board game night; deck-building game; cooperative board game; Ticket to Ride; Monopoly; tabletop strategy; Dungeons board game; worker placement; dice; board game expansion; game meeples",
        "Chess": "chess opening; grandmaster; checkmate; chess tournament; Sicilian defense; chess puzzles; rapid chess; Magnus Carlsen; chess board; endgame; blitz chess; chess engine",
        "Esports": "League of Legends; esports tournament; pro gamer; Counter-Strike; esports team; Twitch stream; Valorant; world championship finals; gaming headset; esports league; caster; Dota 2",
        "Puzzles": "jigsaw puzzle 1000 pieces; crossword; sudoku; Rubik's cube; logic puzzle; word search; brain teaser; escape room; riddle; puzzle mat; nonogram; cryptic clue",
        "Tabletop RPG": "Dungeons & Dragons; dungeon master; character sheet; polyhedral dice; campaign setting; tabletop miniatures; Pathfinder; one-shot adventure; role-playing session; spell slots; D&D module; critical hit",
    },
    "Arts & Crafts": {
        "Painting": "acrylic painting; watercolor; oil paints; canvas; paint brushes; easel; landscape painting; color mixing; abstract art; palette knife; gouache; art gallery",
        "Knitting": "knitting needles; yarn; knitting pattern; crochet hook; scarf; cable knit; wool; knit sweater; amigurumi; cast on; purl stitch; knitting circle",
        "Photography": "DSLR camera; mirrorless camera; camera lens; aperture; shutter speed; tripod; portrait photography; Lightroom editing; golden hour; prime lens; landscape photography; camera bag",
        "Woodworking": "table saw; wood chisel; hand plane; woodworking bench; dovetail joint; wood stain; lumber; router table; sanding; hardwood; woodturning lathe; clamps",
        "Pottery": "pottery wheel; clay; ceramic glaze; kiln; throwing a bowl; stoneware; pottery class; hand building; porcelain; ceramic mug; glazing techniques; slip casting",
        "Drawing & Illustration": "sketchbook; pencil drawing; digital illustration; graphite pencils; ink pens; character design; Procreate; figure drawing; charcoal sketch; drawing tablet; comic illustration; perspective drawing",
        "Sewing": "sewing machine; fabric; sewing pattern; quilting; embroidery; thread; dressmaking; sewing needles; hem; quilt blocks; serger; cross-stitch",
    },
    "Careers & Education": {
        "Job Search": "resume template; job interview; cover letter; LinkedIn profile; job offer; salary negotiation; recruiter; job application; career change; hiring process; job board; reference check",
        "Online Courses": "online course; Coursera; MOOC; certificate program; e-learning; Udemy; video lectures; online degree; course completion; online bootcamp; Khan Academy; course syllabus",
        "Language Learning": "learn Spanish; Duolingo; French grammar; vocabulary flashcards; language exchange; Japanese kanji; fluency; pronunciation; German verbs; Mandarin tones; immersion; language app",
        "Entrepreneurship": "startup; small business; business plan; venture capital; startup funding; founder; side hustle; product launch; bootstrapping; pitch deck; angel investor; e-commerce store",
        "Remote Work": "work from home; home office; video calls; remote team; digital nomad; standing desk; Slack; remote job; hybrid work; zoom fatigue; coworking space; asynchronous communication",
        "College Admissions": "college application; SAT; admission essay; financial aid; scholarship; Ivy League; campus tour; early decision; ACT; college rankings; acceptance letter; FAFSA",
    },
    "News & Politics": {
        "Elections": "presidential election; polls; voter turnout; campaign rally; ballot; primary election; swing states; electoral college; debate night; mail-in voting; midterms; election results",
        "International Relations": "foreign policy; United Nations; diplomacy; trade agreement; NATO; sanctions; peace talks; embassy; G7 summit; geopolitics; ambassador; treaty",
        "Economy & Markets": "inflation; interest rates; Federal Reserve; GDP growth; recession; unemployment rate; consumer prices; stock market crash; economic policy; central bank; trade deficit; jobs report",
        "Law & Justice": "Supreme Court; court ruling; lawsuit; criminal trial; constitutional law; civil rights; judge; jury verdict; legal reform; attorney general; appeals court; legislation",
        "Immigration": "immigration policy; border security; asylum seekers; visa application; green card; refugees; deportation; citizenship test; work permit; migrant crisis; naturalization; immigration reform",
    },
    "Outdoors": {
        "Hiking": "hiking boots; trail map; summit; day hike; trekking poles; hiking backpack; national park trail; switchbacks; trailhead; hiking GPS; waterproof jacket; Appalachian Trail",
        "Fishing": "fishing rod; fly fishing; bass fishing; fishing lure; tackle box; fishing reel; trout stream; ice fishing; fishing line; bait; deep sea fishing; catch and release",
        "Camping": "camping tent; sleeping bag; campfire; camp stove; RV camping; campsite reservation; camping chair; lantern; hammock; s'mores; camping checklist; backcountry camping",
        "Climbing": "rock climbing; bouldering; climbing shoes; chalk bag; belay device; climbing gym; harness; sport climbing; crash pad; carabiner; top rope; climbing route grade",
        "Hunting": "deer hunting; hunting rifle; tree stand; duck hunting; hunting license; camouflage; bow hunting; game calls; trail camera; hunting season; scope; elk hunt",
        "Water Sports": "kayak; stand-up paddleboard; canoe trip; surfing; wetsuit; whitewater rafting; paddle; life jacket; kitesurfing; surfboard; scuba diving; windsurfing",
    },
}


# Shared words of each root's domain: items of sibling leaves use them, as real texts do
# (a soccer and a tennis article both talk about athletes and matches).
_ROOT_RAW: Final[dict[str, str]] = {
    "Sports": "sports; athletes; the season; match day; league standings; coaching; fans; competition",
    "Technology": "tech; gadgets; software; devices; digital tools; specs; hardware; the tech industry",
    "Food & Drink": "food; cooking; recipes; the kitchen; flavours; ingredients; tasting; home cooks",
    "Travel": "travel; holidays; destinations; itineraries; tourists; trips abroad; booking; sightseeing",
    "Personal Finance": "personal finance; money; savings; financial planning; your wallet; banks; interest; household finances",
    "Health & Fitness": "health; wellness; fitness; doctors; healthy habits; the body; symptoms; self-care",
    "Music": "music; songs; albums; musicians; live performances; listeners; playlists; the music scene",
    "Movies & TV": "movies; films; TV shows; streaming; directors; actors; box office; series to binge",
    "Books & Literature": "books; novels; reading; authors; literature; bookshelves; bestseller lists; book clubs",
    "Home & Garden": "home; house; DIY projects; the garden; home decor; rooms; household; renovation ideas",
    "Fashion & Beauty": "fashion; style; beauty; outfits; looks; trends; wardrobe; beauty routine",
    "Automotive": "cars; vehicles; driving; auto industry; motorists; engines; dealerships; garages",
    "Pets & Animals": "pets; animals; pet owners; vets; pet care; animal behaviour; pet supplies; companion animals",
    "Science": "science; research; scientists; discoveries; experiments; studies; the lab; scientific papers",
    "Parenting & Family": "parenting; kids; children; parents; family life; raising children; moms and dads; child development",
    "Games": "games; gaming; players; gameplay; strategy; game night; winning moves; gamers",
    "Arts & Crafts": "crafts; art; handmade projects; makers; creative hobbies; artists; art supplies; craft techniques",
    "Careers & Education": "careers; education; learning; students; professional growth; skills; employers; study",
    "News & Politics": "politics; government; policy; politicians; the news; public debate; officials; legislation news",
    "Outdoors": "outdoors; nature; the wilderness; outdoor gear; adventure; fresh air; trails and rivers; outdoor enthusiasts",
}


def _build() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for root, leaves in _RAW.items():
        for leaf, terms in leaves.items():
            parts = tuple(t.strip() for t in terms.split(";") if t.strip())
            out[f"{root} > {leaf}"] = parts
    return out


#: ``"Root > Leaf"`` -> that leaf's specific terms.
LEAF_TERMS: Final = MappingProxyType(_build())
#: Root -> words its leaves share.
ROOT_TERMS: Final = MappingProxyType(
    {root: tuple(t.strip() for t in terms.split(";")) for root, terms in _ROOT_RAW.items()}
)
#: The roots, in a fixed order.
ROOTS: Final[tuple[str, ...]] = tuple(_RAW)
